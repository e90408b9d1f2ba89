//! Choosing the address to advertise when the user gave none, as
//! `docker swarm init` does: the machine's one non-loopback IPv4 address.

use std::net::{IpAddr, Ipv4Addr};

/// The non-loopback IPv4 addresses of this machine's interfaces that are up.
fn interface_ipv4s() -> std::io::Result<Vec<(String, Ipv4Addr)>> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below; every
    // pointer is checked for null before it is read.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET
                || ifa.ifa_flags & (libc::IFF_UP as u32) == 0
                || ifa.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0
            {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            out.push((name, ip));
        }
        libc::freeifaddrs(ifap);
    }
    Ok(out)
}

/// The address to advertise: the one non-loopback IPv4 address, or loopback
/// on a machine without network; an error naming the choices if there are
/// several.
pub fn default_advertise_ip() -> Result<IpAddr, String> {
    let ips = interface_ipv4s().map_err(|e| format!("listing network interfaces: {e}"))?;
    match ips.as_slice() {
        [] => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        [(_, ip)] => Ok(IpAddr::V4(*ip)),
        many => {
            let list: Vec<String> = many.iter().map(|(n, ip)| format!("{ip} on {n}")).collect();
            Err(format!(
                "could not choose an IP address to advertise since this system has several ({}); specify one with --advertise-addr",
                list.join(", ")
            ))
        }
    }
}
