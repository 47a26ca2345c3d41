//! What reaches the plugin from the job's environment and plugstack.conf:
//! the image pin (`SHOAL_IMAGE_PIN`, `SPANK_SHOAL_IMAGE_PIN` in the prolog,
//! which root reads) and the plugin's arguments. The plugin's own modules
//! are compiled in here as they are (they need no Slurm).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../spank-plugin/src/pin.rs"]
#[allow(dead_code)]
mod pin;
#[path = "../../spank-plugin/src/args.rs"]
#[allow(dead_code)]
mod args;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = pin::Pin::from_env(s) {
        // Root uses only the digest of a site pin: it must be a real one
        // (a typed Digest, checked when the pin was read).
        let d: &shoal::Digest = &p.digest;
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string().parse::<shoal::Digest>().as_ref(), Ok(d));
        assert_eq!(pin::Pin::from_env(&p.to_env()).as_ref(), Ok(&p));
    }
    let words: Vec<&str> = s.split(' ').collect();
    if let Ok(a) = args::PluginArgs::parse(&words) {
        assert!(!a.config.as_os_str().is_empty());
    }
});
