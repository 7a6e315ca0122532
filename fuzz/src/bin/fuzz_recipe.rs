//! AFL target: `ferroq_fuzz::Target::Recipe` on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferroq_fuzz::Target::Recipe.run(data);
    });
}
