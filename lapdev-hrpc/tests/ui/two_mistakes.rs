use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    fn one(&self) -> Result<(), HrpcError>;
    async fn two(self) -> Result<(), HrpcError>;
}

fn main() {}
