#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping(&self);
}

fn main() {}
