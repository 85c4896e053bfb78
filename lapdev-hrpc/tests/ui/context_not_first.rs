use lapdev_hrpc::{Context, HrpcError};

#[lapdev_hrpc::service]
pub trait Svc {
    async fn ping(&self, name: String, ctx: Context) -> Result<(), HrpcError>;
}

fn main() {}
