//! Owner-only files on Windows: a protected DACL granting the current user alone.
//!
//! Files under `%APPDATA%` inherit the profile's DACL, which also admits SYSTEM and the
//! Administrators group, and anything a user or an installer added up the tree. The DACL set
//! here is protected (inheritance from the parent is cut) and holds one entry: full access for
//! the user whose process writes the file. Directories pass that entry on to what is created
//! inside them.

use std::ffi::c_void;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use windows_sys::core::PWSTR;
use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, ERROR_SUCCESS, HANDLE};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    GetNamedSecurityInfoW, SetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    AclSizeInformation, EqualSid, GetAce, GetAclInformation, GetSecurityDescriptorDacl,
    GetTokenInformation, TokenUser, ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, ACL_SIZE_INFORMATION,
    DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// `ACCESS_ALLOWED_ACE_TYPE`.
const ACCESS_ALLOWED: u8 = 0;

pub(super) fn restrict_file(path: &Path) -> io::Result<()> {
    restrict(path, "")
}

pub(super) fn restrict_dir(path: &Path) -> io::Result<()> {
    // OICI: files and folders created inside inherit the entry.
    restrict(path, "OICI")
}

pub(super) fn owner_only(path: &Path) -> io::Result<bool> {
    let user = CurrentUser::new()?;
    let wide = wide(path.as_os_str());
    let mut dacl: *mut ACL = ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: a NUL-terminated path; the out pointers are live; `sd` is freed below.
    let status = unsafe {
        GetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            ptr::null_mut(),
            ptr::null_mut(),
            &mut dacl,
            ptr::null_mut(),
            &mut sd,
        )
    };
    if status != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    // Freed on return; `dacl` points into it.
    let _sd = Local(sd);
    // A null DACL grants everyone everything. Whether the DACL is protected is not asked:
    // entries inherited from the parent would show in the list below, and Wine does not keep
    // the protected flag.
    if dacl.is_null() {
        return Ok(false);
    }
    let mut size = ACL_SIZE_INFORMATION {
        AceCount: 0,
        AclBytesInUse: 0,
        AclBytesFree: 0,
    };
    // SAFETY: `dacl` points into `sd`, alive; `size` is the struct the class names.
    let ok = unsafe {
        GetAclInformation(
            dacl,
            (&mut size as *mut ACL_SIZE_INFORMATION).cast(),
            std::mem::size_of::<ACL_SIZE_INFORMATION>() as u32,
            AclSizeInformation,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    if size.AceCount == 0 {
        return Ok(false);
    }
    for index in 0..size.AceCount {
        let mut ace: *mut c_void = ptr::null_mut();
        // SAFETY: `index` is below the ACL's count; the ACE lives in `sd`.
        if unsafe { GetAce(dacl, index, &mut ace) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every ACE starts with a header; an allowed ACE's SID starts at SidStart.
        let header = unsafe { &*(ace as *const ACE_HEADER) };
        if header.AceType != ACCESS_ALLOWED {
            return Ok(false);
        }
        let sid = unsafe { ptr::addr_of_mut!((*(ace as *mut ACCESS_ALLOWED_ACE)).SidStart) };
        // SAFETY: both SIDs are valid for the duration of the call.
        if unsafe { EqualSid(sid.cast(), user.sid()) } == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sets on `path` a protected DACL of one entry: full access (`FA`) for the current user,
/// with inheritance `flags`.
fn restrict(path: &Path, flags: &str) -> io::Result<()> {
    let user = CurrentUser::new()?;
    let sddl = format!("D:P(A;{flags};FA;;;{})", user.sid_string()?);
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    let sddl = wide(std::ffi::OsStr::new(&sddl));
    // SAFETY: a NUL-terminated SDDL string; `sd` receives a LocalAlloc'd descriptor.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let sd = Local(sd);
    let mut present = 0;
    let mut defaulted = 0;
    let mut dacl: *mut ACL = ptr::null_mut();
    // SAFETY: `sd` is the descriptor made above; `dacl` points into it.
    if unsafe { GetSecurityDescriptorDacl(sd.0, &mut present, &mut dacl, &mut defaulted) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let target = wide(path.as_os_str());
    // SAFETY: a NUL-terminated path and a DACL that lives in `sd` for the call.
    let status = unsafe {
        SetNamedSecurityInfoW(
            target.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            ptr::null_mut(),
            ptr::null_mut(),
            dacl,
            ptr::null(),
        )
    };
    if status != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    Ok(())
}

/// The user this process runs as: its token's user SID.
struct CurrentUser {
    /// A `TOKEN_USER` followed by the SID it points to.
    buffer: Vec<u64>,
}

impl CurrentUser {
    fn new() -> io::Result<Self> {
        let mut token: HANDLE = ptr::null_mut();
        // SAFETY: the current process's pseudo-handle; `token` is closed below.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut needed = 0u32;
        // SAFETY: asking for the size only (null buffer, length 0).
        unsafe { GetTokenInformation(token, TokenUser, ptr::null_mut(), 0, &mut needed) };
        let mut buffer = vec![0u64; (needed as usize).div_ceil(8).max(1)];
        // SAFETY: `buffer` holds `needed` bytes, aligned for TOKEN_USER.
        let ok = unsafe {
            GetTokenInformation(
                token,
                TokenUser,
                buffer.as_mut_ptr().cast(),
                (buffer.len() * 8) as u32,
                &mut needed,
            )
        };
        let error = io::Error::last_os_error();
        // SAFETY: `token` was opened above.
        unsafe { CloseHandle(token) };
        if ok == 0 {
            return Err(error);
        }
        Ok(Self { buffer })
    }

    fn sid(&self) -> PSID {
        // SAFETY: the buffer holds a TOKEN_USER filled by GetTokenInformation.
        unsafe { (*(self.buffer.as_ptr() as *const TOKEN_USER)).User.Sid }
    }

    /// The SID as SDDL writes it (`S-1-5-21-…`).
    fn sid_string(&self) -> io::Result<String> {
        let mut text: PWSTR = ptr::null_mut();
        // SAFETY: a valid SID; `text` receives a LocalAlloc'd, NUL-terminated string.
        if unsafe { ConvertSidToStringSidW(self.sid(), &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let text = Local(text.cast());
        // SAFETY: NUL-terminated UTF-16 written by the call above.
        let chars = unsafe {
            let start = text.0 as *const u16;
            let len = (0..).take_while(|&i| *start.add(i) != 0).count();
            std::slice::from_raw_parts(start, len)
        };
        Ok(String::from_utf16_lossy(chars))
    }
}

/// Memory the system allocated with `LocalAlloc`, freed on drop.
struct Local(*mut c_void);

impl Drop for Local {
    fn drop(&mut self) {
        // SAFETY: the pointer came from an API documented to LocalAlloc it.
        unsafe { LocalFree(self.0) };
    }
}

fn wide(text: &std::ffi::OsStr) -> Vec<u16> {
    text.encode_wide().chain(std::iter::once(0)).collect()
}
