#[derive(Debug)]
pub struct MyError;

#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping(&self) -> Result<(), MyError>;
}

fn main() {}
