fn main() {
    vip_operator::hello();
}
