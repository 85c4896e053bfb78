use lapdev_hrpc::HrpcError;

#[lapdev_hrpc::service]
pub trait Svc {
    #[hrpc(role = "")]
    async fn empty(&self) -> Result<(), HrpcError>;

    #[hrpc(rol = "admin")]
    async fn misspelt(&self) -> Result<(), HrpcError>;

    #[hrpc(role = "admin")]
    #[hrpc(role = "member")]
    async fn twice(&self) -> Result<(), HrpcError>;
}

fn main() {}
