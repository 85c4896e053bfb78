//! The HRPC service traits spoken between the Lapdev server and its in-cluster
//! managers, and the messages they carry. Nothing else lives here: no I/O, no
//! implementations.
