//! Lapdev's in-cluster agent. It dials out to the server, reports cluster info and
//! the workspace pods it manages, and executes the server's commands.
