import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpsConfigurator;
import com.sun.net.httpserver.HttpsExchange;
import com.sun.net.httpserver.HttpsParameters;
import com.sun.net.httpserver.HttpsServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSession;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

/**
 * A partner's ONE Record server as Java shops run it: the JDK's own HTTPS server (JSSE), client
 * certificates required (`SSLParameters.setNeedClientAuth(true)`), TLS 1.3 and 1.2. The key
 * store and trust store are built in memory from PEM files.
 *
 * It answers every request with what it saw, one `name: value` per line:
 *   subject: the client certificate's subject (RFC 2253)
 *   request: the request line (method, target, protocol)
 *   host: the Host headers, as a list (one element: exactly one Host header)
 *   tls: the negotiated protocol
 *   remote: the client's address (one per TCP connection)
 *   connections: TLS connections accepted so far
 *
 * On stdout: `PORT n` once listening on 127.0.0.1, then `CONNECTION n from ADDR` for every
 * connection it accepts (the TLS engine is configured once per connection, before its
 * handshake), so a test can count the TLS connections behind a number of requests; with
 * `sslsocket`, `FAILED <exception>` when a connection fails (a refused handshake).
 *
 * Usage: java HttpsPartner CERT_PEM KEY_PEM TRUSTED_CA_PEM [httpserver|sslsocket]
 *   KEY_PEM is an unencrypted PKCS#8 EC or RSA key; TRUSTED_CA_PEM the client CAs it trusts.
 *   `httpserver` (the default) is `com.sun.net.httpserver.HttpsServer`. Without the fix for
 *   JDK-8315436 (JDK 22; JDK 17.0.15 lacks it) it closes a connection whose handshake failed
 *   without sending the fatal alert JSSE produced. `sslsocket` serves the same answers over JSSE's
 *   `SSLServerSocket` (as blocking Java servers do), which sends the alert: a partner that
 *   refuses our certificate and says why.
 */
public class HttpsPartner {
    static final AtomicLong CONNECTIONS = new AtomicLong();

    public static void main(String[] args) throws Exception {
        char[] pw = "changeit".toCharArray();
        KeyStore keys = KeyStore.getInstance("PKCS12");
        keys.load(null, null);
        keys.setKeyEntry("me", key(Paths.get(args[1])), pw,
                certs(Paths.get(args[0])).toArray(new X509Certificate[0]));
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(keys, pw);
        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        int i = 0;
        for (X509Certificate c : certs(Paths.get(args[2]))) trust.setCertificateEntry("ca" + i++, c);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);

        if (args.length > 3 && args[3].equals("sslsocket")) {
            sslSocket(ctx);
            return;
        }
        HttpsServer server = HttpsServer.create(new InetSocketAddress("127.0.0.1", 0), 64);
        server.setHttpsConfigurator(new HttpsConfigurator(ctx) {
            @Override
            public void configure(HttpsParameters p) {
                // Called for each new connection, before its handshake.
                SSLParameters sp = getSSLContext().getDefaultSSLParameters();
                sp.setNeedClientAuth(true);
                sp.setProtocols(new String[] {"TLSv1.3", "TLSv1.2"});
                p.setSSLParameters(sp);
                long n = CONNECTIONS.incrementAndGet();
                System.out.println("CONNECTION " + n + " from " + p.getClientAddress());
                System.out.flush();
            }
        });
        server.createContext("/", ex -> {
            try {
                answer(ex);
            } catch (Exception e) {
                byte[] b = ("error: " + e).getBytes(StandardCharsets.UTF_8);
                ex.sendResponseHeaders(500, b.length);
                ex.getResponseBody().write(b);
            } finally {
                ex.close();
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("PORT " + server.getAddress().getPort());
        System.out.flush();
    }

    /** The `sslsocket` engine: a thread per connection, HTTP/1.1 keep-alive, GET only. */
    static void sslSocket(SSLContext ctx) throws Exception {
        SSLServerSocket listener = (SSLServerSocket) ctx.getServerSocketFactory()
                .createServerSocket(0, 64, InetAddress.getByName("127.0.0.1"));
        SSLParameters sp = ctx.getDefaultSSLParameters();
        sp.setNeedClientAuth(true);
        sp.setProtocols(new String[] {"TLSv1.3", "TLSv1.2"});
        listener.setSSLParameters(sp);
        System.out.println("PORT " + listener.getLocalPort());
        System.out.flush();
        while (true) {
            SSLSocket s = (SSLSocket) listener.accept();
            long n = CONNECTIONS.incrementAndGet();
            System.out.println("CONNECTION " + n + " from " + s.getRemoteSocketAddress());
            System.out.flush();
            new Thread(() -> serve(s)).start();
        }
    }

    /** Answer requests on one connection until the client closes it or it fails. */
    static void serve(SSLSocket s) {
        try (s) {
            s.setSoTimeout(30000);
            // A refused certificate: JSSE sends the alert and throws here.
            s.startHandshake();
            InputStream in = s.getInputStream();
            OutputStream out = s.getOutputStream();
            while (true) {
                String head = readHead(in);
                if (head == null) return;
                String[] lines = head.split("\r\n");
                List<String> hosts = new ArrayList<>();
                for (int i = 1; i < lines.length; i++) {
                    int colon = lines[i].indexOf(':');
                    if (colon > 0 && lines[i].substring(0, colon).trim().equalsIgnoreCase("host")) {
                        hosts.add(lines[i].substring(colon + 1).trim());
                    }
                }
                SSLSession tls = s.getSession();
                String subject = ((X509Certificate) tls.getPeerCertificates()[0])
                        .getSubjectX500Principal().getName();
                byte[] b = describe(subject, lines[0], hosts.toString(), tls.getProtocol(),
                        String.valueOf(s.getRemoteSocketAddress()));
                out.write(("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                        + b.length + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
                out.write(b);
                out.flush();
            }
        } catch (Exception e) {
            System.out.println("FAILED " + e);
            System.out.flush();
        }
    }

    /** One request head (without its blank line), or null at the end of the stream. */
    static String readHead(InputStream in) throws Exception {
        StringBuilder head = new StringBuilder();
        int c;
        while ((c = in.read()) >= 0) {
            head.append((char) c);
            int n = head.length();
            if (n >= 4 && head.substring(n - 4).equals("\r\n\r\n")) return head.substring(0, n - 4);
            if (n > 65536) throw new IllegalArgumentException("request head too large");
        }
        return null;
    }

    /** The answer body: what the partner saw. */
    static byte[] describe(String subject, String request, String host, String protocol, String remote) {
        StringBuilder out = new StringBuilder();
        out.append("subject: ").append(subject).append('\n');
        out.append("request: ").append(request).append('\n');
        out.append("host: ").append(host).append('\n');
        out.append("tls: ").append(protocol).append('\n');
        out.append("remote: ").append(remote).append('\n');
        out.append("connections: ").append(CONNECTIONS.get()).append('\n');
        return out.toString().getBytes(StandardCharsets.UTF_8);
    }

    static void answer(HttpExchange ex) throws Exception {
        try (InputStream in = ex.getRequestBody()) {
            in.readAllBytes();
        }
        SSLSession tls = ((HttpsExchange) ex).getSSLSession();
        Certificate[] peer = tls.getPeerCertificates();
        String subject = ((X509Certificate) peer[0]).getSubjectX500Principal().getName();
        String request = ex.getRequestMethod() + " " + ex.getRequestURI() + " " + ex.getProtocol();
        byte[] b = describe(subject, request, String.valueOf(ex.getRequestHeaders().get("Host")),
                tls.getProtocol(), String.valueOf(ex.getRemoteAddress()));
        ex.getResponseHeaders().set("Content-Type", "text/plain");
        ex.sendResponseHeaders(200, b.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(b);
        }
    }

    static List<X509Certificate> certs(Path p) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        List<X509Certificate> out = new ArrayList<>();
        try (InputStream in = Files.newInputStream(p)) {
            for (Certificate c : cf.generateCertificates(in)) out.add((X509Certificate) c);
        }
        if (out.isEmpty()) throw new IllegalArgumentException("no certificate in " + p);
        return out;
    }

    static PrivateKey key(Path p) throws Exception {
        String pem = Files.readString(p);
        String begin = "-----BEGIN PRIVATE KEY-----";
        int s = pem.indexOf(begin);
        int e = pem.indexOf("-----END PRIVATE KEY-----");
        if (s < 0 || e < 0) throw new IllegalArgumentException("no PKCS#8 PRIVATE KEY in " + p);
        byte[] der = Base64.getDecoder().decode(pem.substring(s + begin.length(), e).replaceAll("\\s", ""));
        for (String alg : new String[] {"EC", "RSA", "Ed25519"}) {
            try {
                return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(der));
            } catch (Exception ignored) {
            }
        }
        throw new IllegalArgumentException("unsupported key " + p);
    }
}
