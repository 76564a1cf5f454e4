//! HTTP/1.1 as pure functions over bytes (sans-IO): `parse` reads heads,
//! `body` frames bodies, `encode` writes rewritten heads.
pub mod body;
pub mod encode;
pub mod parse;
