#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping(&self) -> u32;
}

fn main() {}
