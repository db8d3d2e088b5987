mod schema;
mod plan;
