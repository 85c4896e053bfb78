#[lapdev_hrpc::service]
pub struct Svc;

fn main() {}
