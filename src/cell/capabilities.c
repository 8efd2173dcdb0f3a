/* Capabilities kept by sandbox root: Docker's default set minus MKNOD.
 * They act only inside the sandbox's own user namespace (on objects that
 * namespace owns: its files through the idmap, its processes, its network
 * namespace). Dropped among others: SYS_ADMIN (no mount, unshare, setns,
 * pivot_root, so the rootfs and masks cannot be undone), SYS_PTRACE,
 * SYS_MODULE, SYS_RAWIO, SYS_TIME, NET_ADMIN (no changing its own network
 * set-up), MKNOD, DAC_READ_SEARCH (no open_by_handle_at), BPF, PERFMON.
 * The bounding set is reduced too, so no execve() (setuid or file
 * capabilities) can bring them back; ambient and inheritable are cleared. */
#include <errno.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cell_internal.h"

static const unsigned kept_capabilities[] = {
        CAP_CHOWN,      CAP_DAC_OVERRIDE,     CAP_FOWNER,  CAP_FSETID,     CAP_KILL,
        CAP_SETGID,     CAP_SETUID,           CAP_SETPCAP, CAP_SETFCAP,    CAP_NET_BIND_SERVICE,
        CAP_SYS_CHROOT, CAP_AUDIT_WRITE,
};
/* Not NET_RAW (which Docker keeps): raw and packet sockets are a recurring
 * source of kernel bugs reachable from a user namespace (CVE-2020-14386,
 * CVE-2016-8655), and nothing a sandbox does needs them. */

const char *const moat_capabilities_kept_names[] = {
        "CHOWN",   "DAC_OVERRIDE", "FOWNER", "FSETID",      "KILL",       "SETGID",      "SETUID",
        "SETPCAP", "SETFCAP",      "NET_BIND_SERVICE",     "SYS_CHROOT", "AUDIT_WRITE",
        NULL,
};

static bool is_kept(unsigned capability)
{
        for (size_t i = 0; i < sizeof(kept_capabilities) / sizeof(kept_capabilities[0]); i++)
                if (kept_capabilities[i] == capability)
                        return true;
        return false;
}

int moat_capabilities_drop(unsigned last_capability, struct moat_child_report *report)
{
        struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
        struct __user_cap_data_struct data[2] = { { 0 } };

        /* Bounding set first: dropping from it needs CAP_SETPCAP, which the
         * effective set still has at this point. */
        for (unsigned capability = 0; capability <= last_capability; capability++) {
                if (is_kept(capability))
                        continue;
                if (prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) < 0 && errno != EINVAL)
                        return moat_child_fail(report, MOAT_STEP_CAPABILITIES, errno, "prctl", "PR_CAPBSET_DROP");
        }
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
                return moat_child_fail(report, MOAT_STEP_CAPABILITIES, errno, "prctl", "PR_CAP_AMBIENT_CLEAR_ALL");
        for (size_t i = 0; i < sizeof(kept_capabilities) / sizeof(kept_capabilities[0]); i++) {
                unsigned capability = kept_capabilities[i];
                data[capability / 32].effective |= 1u << (capability % 32);
                data[capability / 32].permitted |= 1u << (capability % 32);
        }
        if (syscall(SYS_capset, &header, data) < 0)
                return moat_child_fail(report, MOAT_STEP_CAPABILITIES, errno, "capset", "");
        return 0;
}
