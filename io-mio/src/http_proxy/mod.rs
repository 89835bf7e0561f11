//! HTTP/1.1 reverse proxy to one upstream (the gateway's HTTP mode).

mod body;
mod request;
mod response;
mod xfcc;
