use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping<T: Clone>(&self, value: T) -> Result<(), HrpcError>;
}

fn main() {}
