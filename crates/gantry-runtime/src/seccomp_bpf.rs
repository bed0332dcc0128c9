//! Compiles an OCI seccomp profile to the BPF program the kernel loads, once per distinct
//! profile, so the runtime does not compile it at every container start (crun 1.8 does: about
//! 4 ms of CPU per start for Gantry's profile on two architectures, `scripts/bench-seccomp.sh`).
//! The program goes to crun in its `run.oci.seccomp_bpf_data` annotation (base64), which it
//! loads instead of compiling the profile's section; other runtimes ignore the annotation and
//! compile the section, which stays in config.json.
//!
//! The compiler is the one crun uses, libseccomp (`libseccomp.so.2`, installed with crun),
//! opened at run time so building Gantry needs no development headers; it is driven with the
//! same calls crun makes for a profile, so the program is the same one crun would load (a
//! root test reads the filter crun installed in a container and compares). Without the
//! library there is no annotation and crun compiles as before.

use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// libseccomp's `struct scmp_arg_cmp`.
#[repr(C)]
struct ArgCmp {
    arg: c_uint,
    op: c_int,
    datum_a: u64,
    datum_b: u64,
}

type InitFn = unsafe extern "C" fn(u32) -> *mut c_void;
type ReleaseFn = unsafe extern "C" fn(*mut c_void);
type ResolveArchFn = unsafe extern "C" fn(*const c_char) -> u32;
type AddArchFn = unsafe extern "C" fn(*mut c_void, u32) -> c_int;
type ResolveSyscallFn = unsafe extern "C" fn(*const c_char) -> c_int;
type AddRuleFn = unsafe extern "C" fn(*mut c_void, u32, c_int, c_uint, *const ArgCmp) -> c_int;
type ExportFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;

/// The libseccomp calls crun's profile translation makes.
struct Lib {
    init: InitFn,
    release: ReleaseFn,
    arch_resolve_name: ResolveArchFn,
    arch_add: AddArchFn,
    syscall_resolve_name: ResolveSyscallFn,
    rule_add_array: AddRuleFn,
    export_bpf: ExportFn,
}

fn lib() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| {
        let lib = open();
        if lib.is_none() {
            tracing::warn!("libseccomp.so.2 not found: the runtime compiles each container's seccomp profile");
        }
        lib
    })
    .as_ref()
}

fn open() -> Option<Lib> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the signature
    // seccomp.h declares for it (libseccomp 2.x). The handle is never closed, so the
    // function pointers stay valid for the life of the process.
    unsafe {
        let handle = libc::dlopen(c"libseccomp.so.2".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return None;
        }
        let sym = |name: &std::ffi::CStr| {
            let p = libc::dlsym(handle, name.as_ptr());
            (!p.is_null()).then_some(p)
        };
        Some(Lib {
            init: std::mem::transmute::<*mut c_void, InitFn>(sym(c"seccomp_init")?),
            release: std::mem::transmute::<*mut c_void, ReleaseFn>(sym(c"seccomp_release")?),
            arch_resolve_name: std::mem::transmute::<*mut c_void, ResolveArchFn>(sym(c"seccomp_arch_resolve_name")?),
            arch_add: std::mem::transmute::<*mut c_void, AddArchFn>(sym(c"seccomp_arch_add")?),
            syscall_resolve_name: std::mem::transmute::<*mut c_void, ResolveSyscallFn>(sym(
                c"seccomp_syscall_resolve_name",
            )?),
            rule_add_array: std::mem::transmute::<*mut c_void, AddRuleFn>(sym(c"seccomp_rule_add_array")?),
            export_bpf: std::mem::transmute::<*mut c_void, ExportFn>(sym(c"seccomp_export_bpf")?),
        })
    }
}

/// An action as libseccomp encodes it (`SCMP_ACT_*`), with the errno for ERRNO and TRACE.
fn action(name: &str, errno: u32) -> Result<u32, String> {
    Ok(match name.strip_prefix("SCMP_ACT_").unwrap_or("") {
        "ALLOW" => 0x7fff_0000,
        "ERRNO" => 0x0005_0000 | (errno & 0xffff),
        "TRACE" => 0x7ff0_0000 | (errno & 0xffff),
        "KILL" | "KILL_THREAD" => 0,
        "KILL_PROCESS" => 0x8000_0000,
        "TRAP" => 0x0003_0000,
        "LOG" => 0x7ffc_0000,
        "NOTIFY" => 0x7fc0_0000,
        _ => return Err(format!("unknown seccomp action {name}")),
    })
}

/// A comparison as libseccomp numbers them (`enum scmp_compare`).
fn operator(name: &str) -> Result<c_int, String> {
    let ops = ["NE", "LT", "LE", "EQ", "GE", "GT", "MASKED_EQ"];
    let op = name.strip_prefix("SCMP_CMP_").unwrap_or("");
    match ops.iter().position(|o| *o == op) {
        Some(i) => Ok(i as c_int + 1),
        None => Err(format!("unknown seccomp operator {name}")),
    }
}

/// A filter context, released when dropped.
struct Ctx<'a>(&'a Lib, *mut c_void);

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        // SAFETY: the context came from seccomp_init and is released once.
        unsafe { (self.0.release)(self.1) }
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} has a NUL byte"))
}

/// The rules of one `syscalls` entry, added for each of its names as crun adds them: one
/// rule with every comparison, or one rule per comparison when two compare the same
/// argument (libseccomp cannot AND those).
fn add_entry(lib: &Lib, ctx: &Ctx, entry: &Value, default: u32) -> Result<(), String> {
    let errno = entry["errnoRet"].as_u64().unwrap_or(libc::EPERM as u64) as u32;
    let act = action(entry["action"].as_str().unwrap_or(""), errno)?;
    if act == default {
        return Ok(());
    }
    let mut cmps = Vec::new();
    for a in entry["args"].as_array().into_iter().flatten().take(6) {
        let index = a["index"]
            .as_u64()
            .filter(|i| *i < 6)
            .ok_or("a seccomp argument index must be below 6")?;
        cmps.push(ArgCmp {
            arg: index as c_uint,
            op: operator(a["op"].as_str().unwrap_or(""))?,
            datum_a: a["value"].as_u64().unwrap_or(0),
            datum_b: a["valueTwo"].as_u64().unwrap_or(0),
        });
    }
    let repeated = (0..6).any(|i| cmps.iter().filter(|c| c.arg == i).count() > 1);
    let groups: Vec<&[ArgCmp]> = match repeated {
        true => cmps.chunks(1).collect(),
        false => vec![&cmps[..]],
    };
    for name in entry["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let n = cstring(name)?;
        // SAFETY: a NUL-terminated name; the library returns a number or __NR_SCMP_ERROR.
        let nr = unsafe { (lib.syscall_resolve_name)(n.as_ptr()) };
        if nr == -1 {
            continue; // unknown to this libseccomp: crun skips it too
        }
        for g in &groups {
            // SAFETY: g is a valid array of g.len() comparisons, alive for the call.
            let rc = unsafe { (lib.rule_add_array)(ctx.1, act, nr, g.len() as c_uint, g.as_ptr()) };
            if rc < 0 {
                return Err(format!(
                    "seccomp rule for {name}: {}",
                    std::io::Error::from_raw_os_error(-rc)
                ));
            }
        }
    }
    Ok(())
}

/// The BPF program for an OCI `linux.seccomp` profile, as crun would compile it.
pub fn compile(profile: &Value) -> Result<Vec<u8>, String> {
    let lib = lib().ok_or("libseccomp.so.2 is not installed")?;
    let errno = profile["defaultErrnoRet"].as_u64().unwrap_or(libc::EPERM as u64) as u32;
    let default = action(profile["defaultAction"].as_str().unwrap_or(""), errno)?;
    // SAFETY: seccomp_init returns a new context or NULL.
    let raw = unsafe { (lib.init)(default) };
    if raw.is_null() {
        return Err("seccomp_init failed".into());
    }
    let ctx = Ctx(lib, raw);
    for arch in profile["architectures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let short = arch.strip_prefix("SCMP_ARCH_").unwrap_or(arch).to_ascii_lowercase();
        let c = cstring(&short)?;
        // SAFETY: a NUL-terminated name; 0 means unknown.
        let token = unsafe { (lib.arch_resolve_name)(c.as_ptr()) };
        if token == 0 {
            return Err(format!("unknown seccomp architecture {arch}"));
        }
        // SAFETY: a live context and a token the library gave.
        let rc = unsafe { (lib.arch_add)(ctx.1, token) };
        if rc < 0 && rc != -libc::EEXIST {
            return Err(format!("adding seccomp architecture {arch}: error {}", -rc));
        }
    }
    for entry in profile["syscalls"].as_array().into_iter().flatten() {
        add_entry(lib, &ctx, entry, default)?;
    }
    export(lib, &ctx)
}

/// The context's program, through a memory file (libseccomp 2.5 exports to a descriptor).
fn export(lib: &Lib, ctx: &Ctx) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let mut file = crate::sys::memfd(c"seccomp-bpf", libc::MFD_CLOEXEC).map_err(|e| format!("memfd_create: {e}"))?;
    // SAFETY: a live context and an open descriptor.
    let rc = unsafe { (lib.export_bpf)(ctx.1, file.as_raw_fd()) };
    if rc < 0 {
        return Err(format!("seccomp_export_bpf: error {}", -rc));
    }
    let mut bpf = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bpf))
        .map_err(|e| e.to_string())?;
    Ok(bpf)
}

/// A profile's program in base64, for the annotation; compiled once per distinct profile
/// (they differ only by the capabilities a container holds). None when it cannot be
/// compiled here: the runtime then compiles the profile itself.
pub fn annotation(profile: &Value) -> Option<Arc<str>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<str>>>> = OnceLock::new();
    let key = profile.to_string();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap().get(&key) {
        return Some(hit.clone());
    }
    let bpf = match compile(profile) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "compiling a seccomp profile; the runtime will compile it");
            return None;
        }
    };
    let encoded: Arc<str> = base64::engine::general_purpose::STANDARD.encode(bpf).into();
    let mut cache = cache.lock().unwrap();
    // Bounded: a node sees few distinct capability sets; a flood of them just recompiles.
    if cache.len() >= 64 {
        cache.clear();
    }
    cache.insert(key, encoded.clone());
    Some(encoded)
}

/// The annotation's name.
pub const ANNOTATION: &str = "run.oci.seccomp_bpf_data";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn actions_and_operators_are_libseccomps_numbers() {
        assert_eq!(action("SCMP_ACT_ERRNO", 1).unwrap(), 0x0005_0001);
        assert_eq!(action("SCMP_ACT_ALLOW", 1).unwrap(), 0x7fff_0000);
        assert!(action("SCMP_ACT_NOPE", 1).is_err());
        assert_eq!(operator("SCMP_CMP_NE").unwrap(), 1);
        assert_eq!(operator("SCMP_CMP_MASKED_EQ").unwrap(), 7);
        assert!(operator("MASKED_EQ").is_err());
    }

    #[test]
    fn a_profile_compiles_to_whole_instructions_and_bad_ones_are_refused() {
        let profile = crate::bundle::seccomp(&["CAP_CHOWN".to_string()]);
        let bpf = compile(&profile).expect("libseccomp.so.2 is installed with crun");
        // sock_filter instructions are 8 bytes; the program ends in a return.
        assert!(bpf.len() > 800 && bpf.len().is_multiple_of(8), "{}", bpf.len());
        assert_eq!(compile(&profile).unwrap(), bpf, "the same profile, the same program");
        let ptrace = crate::bundle::seccomp(&["CAP_CHOWN".to_string(), "CAP_SYS_PTRACE".to_string()]);
        assert_ne!(compile(&ptrace).unwrap(), bpf);
        let bad = json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_VAX"], "syscalls": []});
        assert!(compile(&bad).unwrap_err().contains("SCMP_ARCH_VAX"));
        let bad = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]});
        assert!(compile(&bad).unwrap_err().contains("index"));
        let bad = json!({"defaultAction": "SCMP_ACT_SOMETIMES", "syscalls": []});
        assert!(compile(&bad).is_err());
        assert_eq!(
            annotation(&profile).as_deref(),
            Some(&*base64::engine::general_purpose::STANDARD.encode(&bpf))
        );
    }
}
