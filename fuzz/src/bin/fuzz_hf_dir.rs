//! AFL target: `ferroq_fuzz::Target::HfDir` on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferroq_fuzz::Target::HfDir.run(data);
    });
}
