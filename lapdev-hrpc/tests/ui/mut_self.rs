use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping(&mut self) -> Result<(), HrpcError>;
}

fn main() {}
