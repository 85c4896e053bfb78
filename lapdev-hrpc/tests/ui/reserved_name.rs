use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    async fn with_timeout(&self) -> Result<(), HrpcError>;
}

fn main() {}
