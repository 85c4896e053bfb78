//! HRPC: Lapdev's HTTP RPC layer.
