//! Any text fed to the config parser must give a config or an error, never a panic, and a
//! config that validates must print (dump) to text that validates again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replicator::config::{dump, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Includes would read the fuzzer's working directory; keep the input self-contained.
    if text.contains("include") {
        return;
    }
    if let Ok(config) = Config::parse_str(text, "fuzz.conf") {
        let printed = dump::dump(&config, None);
        let again = Config::parse_str(&printed, "dump.conf")
            .unwrap_or_else(|e| panic!("dump does not parse back: {e}\n{printed}"));
        assert_eq!(printed, dump::dump(&again, None));
    }
});
