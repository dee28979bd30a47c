/*
 * The /dev nodes as the stat family sees them (character devices, the vfio cdev's st_rdev equal
 * to the sysfs view's vfio-dev/vfioN/dev, fstat of an open fd equal to stat of its path, ENOENT
 * for nodes that do not exist, no xattrs), and the directory functions glibc implements with
 * internal calls (scandir, glob, nftw, ftw, canonicalize_file_name) on the sysfs view.
 */
#define _GNU_SOURCE
#include "uiommu_test.h"
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BDF "0000:01:00.0"
#define SYSDEV "/sys/bus/pci/devices/" BDF

static void check_chr(const char *path, unsigned maj, int want_minor)
{
	struct stat st, lst, at;
	CHECK(stat(path, &st) == 0);
	CHECK(S_ISCHR(st.st_mode));
	CHECK(major(st.st_rdev) == maj);
	if (want_minor >= 0)
		CHECK(minor(st.st_rdev) == (unsigned)want_minor);
	CHECK(st.st_size == 0 && st.st_nlink == 1);
	CHECK(lstat(path, &lst) == 0 && lst.st_rdev == st.st_rdev && lst.st_ino == st.st_ino);
	CHECK(fstatat(AT_FDCWD, path, &at, 0) == 0 && at.st_rdev == st.st_rdev);
	struct statx sx;
	CHECK(statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &sx) == 0);
	CHECK(S_ISCHR(sx.stx_mode) && sx.stx_rdev_major == maj &&
	      sx.stx_rdev_minor == minor(st.st_rdev) && sx.stx_ino == st.st_ino);

	int fd = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	struct stat fst;
	CHECK(fstat(fd, &fst) == 0);
	CHECK(S_ISCHR(fst.st_mode) && fst.st_rdev == st.st_rdev && fst.st_ino == st.st_ino &&
	      fst.st_dev == st.st_dev);
	CHECK(fstatat(fd, "", &at, AT_EMPTY_PATH) == 0 && at.st_rdev == st.st_rdev);
	CHECK(statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) == 0 && S_ISCHR(sx.stx_mode));
	int dup_fd = dup(fd);
	CHECK(fstat(dup_fd, &fst) == 0 && fst.st_rdev == st.st_rdev);
	/* A bad buffer is EFAULT, as the system call. */
	CHECK_ERR(fstat(fd, (struct stat *)8), EFAULT);
	CHECK_ERR(stat(path, (struct stat *)8), EFAULT);
	char v[16];
	CHECK_ERR(getxattr(path, "security.selinux", v, sizeof(v)), ENODATA);
	CHECK_ERR(lgetxattr(path, "user.x", v, sizeof(v)), ENODATA);
	CHECK(listxattr(path, v, sizeof(v)) == 0 && llistxattr(path, v, sizeof(v)) == 0);
	close(dup_fd);
	close(fd);
}

static int walked, walked_vendor;

static int walk_fn(const char *fpath, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	if (strncmp(fpath, SYSDEV, strlen(SYSDEV)) != 0)
		return 1;
	walked++;
	if (strcmp(fpath + ftw->base, "vendor") == 0 && strcmp(fpath, SYSDEV "/vendor") == 0)
		walked_vendor++;
	return 0;
}

static int ftw_fn(const char *fpath, const struct stat *sb, int flag)
{
	(void)flag;
	if (strncmp(fpath, SYSDEV, strlen(SYSDEV)) != 0 || sb == NULL)
		return 1;
	walked++;
	return 0;
}

static int only_vfio(const struct dirent *d)
{
	/* The filter runs as program code: its calls are served by the library. */
	struct stat st;
	char p[PATH_MAX];
	snprintf(p, sizeof(p), SYSDEV "/vfio-dev/%s", d->d_name);
	return strncmp(d->d_name, "vfio", 4) == 0 && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* After exec: fd 10 (fresh /dev/iommu) was taken over, fd 11 (used) was not. */
static int exec_child(void)
{
	struct stat st;
	CHECK(fstat(10, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 10);
	struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
	CHECK(ioctl(10, IOMMU_IOAS_ALLOC, &ia) == 0 && ia.out_ioas_id == 1);
	if (host_engine()) {
		/* The host engine's files live across exec as Linux's do: used or not. */
		CHECK(fstat(11, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 10);
		CHECK(ioctl(11, IOMMU_IOAS_ALLOC, &ia) == 0);
	} else {
		CHECK(fstat(11, &st) == 0 && S_ISREG(st.st_mode));
		CHECK_ERR(ioctl(11, IOMMU_IOAS_ALLOC, &ia), ENOTTY);
	}
	PASS("dev_nodes exec child");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "exec-child") == 0)
		return exec_child();
	/* The vfio cdev's numbers are the sysfs view's. */
	char buf[32] = { 0 };
	FILE *f = fopen(SYSDEV "/vfio-dev/vfio0/dev", "r");
	CHECK(f != NULL);
	unsigned maj = 0, min = 0;
	CHECK(fscanf(f, "%u:%u", &maj, &min) == 2);
	fclose(f);
	check_chr("/dev/vfio/devices/vfio0", maj, (int)min);
	check_chr("/dev/vfio/devices/vfio1", maj, (int)min + 1);
	check_chr("/dev/iommu", 10, -1);
	check_chr("/dev/vfio/vfio", 10, 196);
	check_chr("/dev/vfio/5", 243, -1);
	struct stat a, b;
	CHECK(stat("/dev/vfio/5", &a) == 0 && stat("/dev/vfio/6", &b) == 0);
	CHECK(a.st_rdev != b.st_rdev && a.st_ino != b.st_ino);
	CHECK(stat("/dev/vfio/vfio", &a) == 0 && (a.st_mode & 0777) == 0666);
	CHECK(stat("/dev/iommu", &a) == 0 && (a.st_mode & 0777) == 0600 && a.st_uid == geteuid());

	/* Nodes that do not exist. */
	CHECK_ERR(stat("/dev/vfio/devices/vfio99", &a), ENOENT);
	CHECK_ERR(stat("/dev/vfio/4", &a), ENOENT);
	CHECK_ERR(stat("/dev/vfio/devices/vfio01", &a), ENOENT);
	CHECK_ERR(getxattr("/dev/vfio/4", "user.x", buf, sizeof(buf)), ENOENT);

	/* Other files are untouched: a memfd is a regular file, /dev/null a character device. */
	int m = memfd_create("plain", MFD_CLOEXEC);
	CHECK(m >= 0 && fstat(m, &a) == 0 && S_ISREG(a.st_mode));
	close(m);
	CHECK(stat("/dev/null", &a) == 0 && S_ISCHR(a.st_mode) && major(a.st_rdev) == 1);

	/* scandir, with a filter that itself uses the view. */
	struct dirent **list = NULL;
	int n = scandir(SYSDEV "/vfio-dev", &list, only_vfio, alphasort);
	CHECK(n == 1 && strcmp(list[0]->d_name, "vfio0") == 0);
	for (int i = 0; i < n; i++)
		free(list[i]);
	free(list);
	n = scandir("/sys/kernel/iommu_groups/6/devices", &list, NULL, alphasort);
	CHECK(n == 4 && strcmp(list[2]->d_name, "0000:02:00.0") == 0 &&
	      strcmp(list[3]->d_name, "0000:02:00.1") == 0);
	for (int i = 0; i < n; i++)
		free(list[i]);
	free(list);

	/* glob answers /sys paths. */
	glob_t g;
	CHECK(glob("/sys/bus/pci/devices/*/vfio-dev/vfio*", 0, NULL, &g) == 0);
	CHECK(g.gl_pathc == 5);
	CHECK(strcmp(g.gl_pathv[0], SYSDEV "/vfio-dev/vfio0") == 0);
	CHECK(strcmp(g.gl_pathv[3], "/sys/bus/pci/devices/0000:04:01.0/vfio-dev/vfio3") == 0);
	CHECK(strcmp(g.gl_pathv[4], "/sys/bus/pci/devices/0000:09:00.0/vfio-dev/vfio4") == 0);
	globfree(&g);
	CHECK(glob("/sys/kernel/iommu_groups/6/devices/*", 0, NULL, &g) == 0 && g.gl_pathc == 2);
	CHECK(strcmp(g.gl_pathv[1], "/sys/kernel/iommu_groups/6/devices/0000:02:00.1") == 0);
	globfree(&g);
	CHECK(glob("/sys/bus/pci/devices/" BDF "/nothing*", 0, NULL, &g) == GLOB_NOMATCH);

	/* nftw and ftw walk the view with /sys paths. */
	walked = walked_vendor = 0;
	CHECK(nftw(SYSDEV, walk_fn, 8, 0) == 0);
	CHECK(walked >= 10 && walked_vendor == 1);
	walked = 0;
	CHECK(ftw(SYSDEV, ftw_fn, 8) == 0 && walked >= 10);

	char *c = canonicalize_file_name(SYSDEV "/iommu_group");
	CHECK(c && strcmp(c, "/sys/kernel/iommu_groups/5") == 0);
	free(c);

	/* Files of ours across exec: a fresh one is taken over, a used one is not. */
	int fresh = open("/dev/iommu", O_RDWR);
	int used = open("/dev/iommu", O_RDWR);
	CHECK(fresh >= 0 && used >= 0);
	struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
	CHECK(ioctl(used, IOMMU_IOAS_ALLOC, &ia) == 0);
	CHECK(dup2(fresh, 10) == 10 && dup2(used, 11) == 11);
	PASS("dev_nodes");
	fflush(stdout);
	execl("/proc/self/exe", argv[0], "exec-child", (char *)NULL);
	CHECK(0 && "execl");
	return 1;
}
