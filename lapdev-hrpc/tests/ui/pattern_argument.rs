use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping(&self, (a, b): (u32, u32)) -> Result<(), HrpcError>;
}

fn main() {}
