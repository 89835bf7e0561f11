import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayInputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.util.HexFormat;
import java.util.List;

/**
 * A Java HTTP application behind the gateway, reading the partner's certificate the way Java
 * servers and Keycloak's lookups do: from `x-forwarded-client-cert` (Envoy's format: the first
 * element before a comma, `;`-separated `key=value` pairs, `Cert` an optionally quoted,
 * URL-encoded PEM decoded with java.net.URLDecoder) and from an nginx-style header holding the
 * URL-encoded PEM. It answers every request with what it saw, one `name: value` per line.
 *
 * Usage: java XfccUpstream HEADER   (prints "PORT n" once listening on 127.0.0.1)
 */
public class XfccUpstream {
    public static void main(String[] args) throws Exception {
        String nginxHeader = args[0];
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 64);
        server.createContext("/", ex -> {
            try {
                answer(ex, nginxHeader);
            } catch (Exception e) {
                byte[] b = ("error: " + e).getBytes(StandardCharsets.UTF_8);
                ex.sendResponseHeaders(500, b.length);
                ex.getResponseBody().write(b);
            } finally {
                ex.close();
            }
        });
        server.start();
        System.out.println("PORT " + server.getAddress().getPort());
        System.out.flush();
    }

    static void answer(HttpExchange ex, String nginxHeader) throws Exception {
        MessageDigest body = MessageDigest.getInstance("SHA-256");
        long bodyBytes = 0;
        try (InputStream in = ex.getRequestBody()) {
            byte[] buf = new byte[65536];
            int n;
            while ((n = in.read(buf)) > 0) {
                body.update(buf, 0, n);
                bodyBytes += n;
            }
        }
        var h = ex.getRequestHeaders();
        StringBuilder out = new StringBuilder();
        List<String> xfccValues = h.get("x-forwarded-client-cert");
        out.append("xfcc-count: ").append(xfccValues == null ? 0 : xfccValues.size()).append('\n');
        String xfcc = h.getFirst("x-forwarded-client-cert");
        if (xfcc != null) {
            String element = xfcc.contains(",") ? xfcc.substring(0, xfcc.indexOf(',')) : xfcc;
            String cert = null;
            String hash = null;
            for (String pair : element.split(";")) {
                int eq = pair.indexOf('=');
                if (eq < 0) continue;
                String key = pair.substring(0, eq).trim();
                String value = pair.substring(eq + 1).trim();
                if (key.equals("Cert")) cert = value;
                if (key.equals("Hash")) hash = value;
            }
            out.append("xfcc-hash-field: ").append(hash).append('\n');
            if (cert != null) {
                if (cert.startsWith("\"") && cert.endsWith("\"")) {
                    cert = cert.substring(1, cert.length() - 1);
                }
                describe(out, "xfcc", URLDecoder.decode(cert, StandardCharsets.UTF_8));
            }
        }
        String nginx = h.getFirst(nginxHeader);
        if (nginx != null) {
            describe(out, "nginx", URLDecoder.decode(nginx, StandardCharsets.UTF_8));
        }
        for (String name : new String[] {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}) {
            out.append(name).append(": ").append(h.get(name)).append('\n');
        }
        out.append("method: ").append(ex.getRequestMethod()).append('\n');
        out.append("body-bytes: ").append(bodyBytes).append('\n');
        out.append("body-sha256: ").append(HexFormat.of().formatHex(body.digest())).append('\n');
        byte[] b = out.toString().getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "text/plain");
        ex.sendResponseHeaders(200, b.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(b);
        }
    }

    /** The subject and DER SHA-256 of the PEM certificate `pem`, as `prefix-...` lines. */
    static void describe(StringBuilder out, String prefix, String pem) throws Exception {
        X509Certificate c = (X509Certificate) CertificateFactory.getInstance("X.509")
                .generateCertificate(new ByteArrayInputStream(pem.getBytes(StandardCharsets.US_ASCII)));
        out.append(prefix).append("-subject: ").append(c.getSubjectX500Principal().getName()).append('\n');
        out.append(prefix).append("-sha256: ")
                .append(HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(c.getEncoded())))
                .append('\n');
    }
}
