mod plan;
mod schema;
