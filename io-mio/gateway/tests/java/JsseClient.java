// A Java (JSSE) HTTPS client for the gateway tests: the TLS stack a Spring Boot, Quarkus or
// NE:ONE partner uses. Prints one result line, then the response body:
//   OK <protocol> <status line>      the request went through
//   TLSERROR <exception message>     the handshake or the connection failed
//
// usage: java JsseClient HOST PORT PROTOCOL CA_PEM [CERT_PEM KEY_PEM]
//   PROTOCOL is TLSv1.3 or TLSv1.2; KEY_PEM is an unencrypted PKCS#8 EC or RSA key.
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.*;
import java.security.cert.*;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.*;
import javax.net.ssl.*;

public class JsseClient {
    static byte[] pemBody(String pem, String label) {
        String begin = "-----BEGIN " + label + "-----";
        int s = pem.indexOf(begin);
        int e = pem.indexOf("-----END " + label + "-----");
        if (s < 0 || e < 0) throw new IllegalArgumentException("no " + label + " in PEM");
        String b64 = pem.substring(s + begin.length(), e).replaceAll("\\s", "");
        return Base64.getDecoder().decode(b64);
    }

    static List<X509Certificate> certs(Path p) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        List<X509Certificate> out = new ArrayList<>();
        try (InputStream in = Files.newInputStream(p)) {
            for (java.security.cert.Certificate c : cf.generateCertificates(in)) out.add((X509Certificate) c);
        }
        return out;
    }

    static PrivateKey key(Path p) throws Exception {
        byte[] der = pemBody(Files.readString(p), "PRIVATE KEY");
        for (String alg : new String[] {"EC", "RSA", "Ed25519"}) {
            try {
                return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(der));
            } catch (Exception ignored) {
            }
        }
        throw new IllegalArgumentException("unsupported key " + p);
    }

    public static void main(String[] a) throws Exception {
        String host = a[0];
        int port = Integer.parseInt(a[1]);
        String protocol = a[2];
        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        int i = 0;
        for (X509Certificate c : certs(Paths.get(a[3]))) trust.setCertificateEntry("ca" + i++, c);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        KeyManager[] kms = null;
        if (a.length >= 6) {
            char[] pw = "changeit".toCharArray();
            KeyStore ks = KeyStore.getInstance("PKCS12");
            ks.load(null, null);
            List<X509Certificate> chain = certs(Paths.get(a[4]));
            ks.setKeyEntry("me", key(Paths.get(a[5])), pw, chain.toArray(new X509Certificate[0]));
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(ks, pw);
            kms = kmf.getKeyManagers();
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kms, tmf.getTrustManagers(), null);
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(host, port)) {
            s.setSoTimeout(10000);
            s.setEnabledProtocols(new String[] {protocol});
            SSLParameters params = s.getSSLParameters();
            params.setServerNames(List.of(new SNIHostName("localhost")));
            params.setEndpointIdentificationAlgorithm("HTTPS");
            s.setSSLParameters(params);
            s.startHandshake();
            OutputStream out = s.getOutputStream();
            out.write("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".getBytes(StandardCharsets.US_ASCII));
            out.flush();
            // TLS 1.3: a refused client certificate is only reported after the handshake,
            // on the first read.
            byte[] resp = s.getInputStream().readAllBytes();
            String text = new String(resp, StandardCharsets.UTF_8);
            int eol = text.indexOf("\r\n");
            if (eol < 0) {
                System.out.println("TLSERROR no HTTP response (" + resp.length + " bytes)");
                return;
            }
            System.out.println("OK " + s.getSession().getProtocol() + " " + text.substring(0, eol));
            int body = text.indexOf("\r\n\r\n");
            System.out.println(body < 0 ? "" : text.substring(body + 4));
        } catch (IOException e) {
            System.out.println("TLSERROR " + e.getMessage());
        }
    }
}
