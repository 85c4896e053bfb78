use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping(&self, name: &str) -> Result<(), HrpcError>;
}

fn main() {}
