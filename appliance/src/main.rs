mod tls;
fn main() {}
