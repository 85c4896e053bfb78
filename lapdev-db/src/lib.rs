//! Lapdev's database layer: the SeaORM entities, the repository API the rest of the
//! code uses instead of raw SeaORM, and connect-and-migrate on start.
