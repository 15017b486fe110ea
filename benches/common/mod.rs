//! What the benchmarks share: their command line, `--name VALUE` options with defaults.
//! (A directory, not `benches/common.rs`, so that cargo does not take it for a benchmark.)

use std::collections::BTreeMap;
use std::str::FromStr;

/// A benchmark's options as given on the command line.
pub struct Args {
    values: BTreeMap<String, String>,
}

impl Args {
    /// Reads the process's arguments: each of `options` (a name and what its value is, as
    /// in `("--rollouts", "N")`) followed by its value. `--bench`, which `cargo bench`
    /// adds, is passed over; `--help` prints the usage and exits; an unknown argument or a
    /// missing value fails naming it, with the usage.
    pub fn parse(options: &[(&str, &str)]) -> Args {
        let usage = options
            .iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut values = BTreeMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => {}
                "--help" => {
                    println!("options: {usage}");
                    std::process::exit(0);
                }
                name if options.iter().any(|(known, _)| *known == name) => {
                    let value = args
                        .next()
                        .unwrap_or_else(|| panic!("{name} needs a value ({usage})"));
                    values.insert(arg, value);
                }
                other => panic!("unknown argument {other:?} ({usage})"),
            }
        }
        Args { values }
    }

    /// The value of option `name`, or `default` when it was not given; fails naming the
    /// option when its value does not parse.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        match self.values.get(name) {
            Some(value) => value
                .parse()
                .unwrap_or_else(|_| panic!("{name} {value:?}: not a valid value")),
            None => default,
        }
    }
}
