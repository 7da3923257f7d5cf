mod btf;
mod symbolize;

fn main() {}
