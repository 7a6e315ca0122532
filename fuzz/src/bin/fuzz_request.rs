//! AFL target: `ferroq_fuzz::Target::Request` on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferroq_fuzz::Target::Request.run(data);
    });
}
