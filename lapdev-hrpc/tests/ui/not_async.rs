use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    fn ping(&self) -> Result<(), HrpcError>;
}

fn main() {}
