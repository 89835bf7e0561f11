// A Java application that reaches its partners through the egress proxy the way any JVM
// service is pointed at one: -Dhttp.proxyHost=HOST -Dhttp.proxyPort=PORT, plain http:// URLs
// (HttpURLConnection then sends absolute-form requests to the proxy, which carries them over
// mTLS). Makes N GET requests to URL on kept-alive connections and prints, per request:
//   STATUS <code> <body on one line>
//
// usage: java -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=P ProxyClient URL N
import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;

public class ProxyClient {
    public static void main(String[] a) throws Exception {
        URL url = new URI(a[0]).toURL();
        int n = Integer.parseInt(a[1]);
        for (int i = 0; i < n; i++) {
            HttpURLConnection c = (HttpURLConnection) url.openConnection();
            c.setConnectTimeout(10000);
            c.setReadTimeout(20000);
            int code = c.getResponseCode();
            InputStream in = code < 400 ? c.getInputStream() : c.getErrorStream();
            String body = in == null ? "" : new String(in.readAllBytes(), StandardCharsets.UTF_8);
            if (in != null) in.close();
            System.out.println("STATUS " + code + " " + body.replace('\n', ' ').replace('\r', ' '));
        }
    }
}
