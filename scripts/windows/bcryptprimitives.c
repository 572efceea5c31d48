/* A stand-in for Windows' bcryptprimitives.dll, for running the Windows build under Wine only.
 *
 * Rust's std asks ProcessPrng (bcryptprimitives.dll, Windows 10 and later) for random bytes at
 * start. Debian bookworm's Wine 8.0 has no such DLL, so every Rust .exe fails to load there.
 * This DLL exports ProcessPrng on top of RtlGenRandom (advapi32's SystemFunction036), which
 * Wine has. It is placed beside the test executables by scripts/windows/check and is never
 * shipped: real Windows has the real DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
