// Reads the client-certificate fields the proxy forwarded the way Keycloak's
// x509cert-lookup providers do, and prints what each yields.
//
// Usage: java KeycloakLookups.java XFCC_FILE ESCAPED_PEM_FILE
//
// envoy: the x-forwarded-client-cert value is split at ';' (quotes are not honoured), the
//        value of Cert (or Chain, which wins) has its enclosing quotes removed and is
//        URL-decoded with java.net.URLDecoder (a form decoder: '+' is a space).
// nginx: the header value is URL-decoded with java.net.URLDecoder, then read as PEM.
// For each: "<provider> <SHA-256 of the DER, hex> <subject, RFC 2253>".

import java.io.ByteArrayInputStream;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.util.HexFormat;
import java.util.StringTokenizer;

public class KeycloakLookups {
    static String unquoteAndDecode(String value) {
        if (value.startsWith("\"") && value.endsWith("\"")) {
            value = value.substring(1, value.length() - 1);
        }
        return URLDecoder.decode(value, StandardCharsets.UTF_8);
    }

    static String envoy(String xfcc) {
        String pem = null;
        StringTokenizer st = new StringTokenizer(xfcc, ";");
        while (st.hasMoreTokens()) {
            String token = st.nextToken();
            int i = token.indexOf('=');
            if (i == -1) continue;
            String key = token.substring(0, i).trim();
            String value = token.substring(i + 1).trim();
            if (key.equals("Chain")) {
                return unquoteAndDecode(value);
            } else if (key.equals("Cert")) {
                pem = unquoteAndDecode(value);
            }
        }
        return pem;
    }

    static void print(String provider, String pem) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        X509Certificate cert = (X509Certificate) cf.generateCertificate(
            new ByteArrayInputStream(pem.getBytes(StandardCharsets.US_ASCII)));
        byte[] hash = MessageDigest.getInstance("SHA-256").digest(cert.getEncoded());
        System.out.println(provider + " " + HexFormat.of().formatHex(hash) + " "
            + cert.getSubjectX500Principal().getName());
    }

    public static void main(String[] args) throws Exception {
        print("envoy", envoy(Files.readString(Path.of(args[0])).trim()));
        print("nginx", URLDecoder.decode(Files.readString(Path.of(args[1])).trim(), StandardCharsets.UTF_8));
    }
}
