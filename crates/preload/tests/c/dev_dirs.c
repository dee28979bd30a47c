/*
 * /dev/vfio and /dev/vfio/devices as directories (the built-in platform: vfio groups 5, 6, 7;
 * vfio0..vfio3): the stat family and access report directories owned as the real /dev,
 * open(O_DIRECTORY), readdir, scandir, glob and nftw list the nodes (DT_CHR), entries agree
 * with stat of their paths, and the nodes themselves still open the engine's files.
 */
#define _GNU_SOURCE
#include "uiommu_test.h"
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static struct stat dev_st;

static void check_dir(const char *path, nlink_t nlink)
{
	struct stat st, lst, at;
	CHECK(stat(path, &st) == 0);
	CHECK(S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0755);
	CHECK(st.st_nlink == nlink);
	CHECK(st.st_uid == dev_st.st_uid && st.st_gid == dev_st.st_gid);
	CHECK(st.st_dev == dev_st.st_dev);
	CHECK(lstat(path, &lst) == 0 && S_ISDIR(lst.st_mode) && lst.st_ino == st.st_ino);
	CHECK(fstatat(AT_FDCWD, path, &at, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(at.st_mode) &&
	      at.st_ino == st.st_ino);
	struct statx sx;
	CHECK(statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &sx) == 0);
	CHECK(S_ISDIR(sx.stx_mode) && (sx.stx_mode & 07777) == 0755 && sx.stx_ino == st.st_ino &&
	      sx.stx_nlink == nlink && sx.stx_uid == dev_st.st_uid);
	CHECK(access(path, F_OK) == 0 && access(path, R_OK | X_OK) == 0);
	CHECK(faccessat(AT_FDCWD, path, R_OK | X_OK, 0) == 0);
	CHECK(euidaccess(path, R_OK | X_OK) == 0);
	CHECK(faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) == 0);
	if (geteuid() != 0 && geteuid() != dev_st.st_uid) {
		CHECK_ERR(access(path, W_OK), EACCES);
		CHECK_ERR(faccessat(AT_FDCWD, path, R_OK | W_OK, AT_EACCESS), EACCES);
	} else {
		CHECK(access(path, W_OK) == 0);
	}

	/* A directory open, and fstat of it agreeing with stat of the path. */
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK(fd >= 0);
	struct stat fst;
	CHECK(fstat(fd, &fst) == 0 && S_ISDIR(fst.st_mode) && fst.st_ino == st.st_ino &&
	      fst.st_dev == st.st_dev && fst.st_uid == st.st_uid);
	CHECK(fstatat(fd, "", &at, AT_EMPTY_PATH) == 0 && at.st_ino == st.st_ino);
	CHECK(statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) == 0 && S_ISDIR(sx.stx_mode) &&
	      sx.stx_ino == st.st_ino);
	close(fd);
	CHECK_ERR(open(path, O_RDWR), EISDIR);
}

/* Every entry of `dir` through opendir/readdir: `want` (NULL-terminated) plus . and .. (with
 * the inodes of `dir` and `parent`), each of the wanted ones DT_CHR with the inode stat of its
 * path reports, except "devices". */
static void check_listing(const char *dir, const char *const *want, ino_t parent)
{
	struct stat self;
	CHECK(stat(dir, &self) == 0);
	DIR *d = opendir(dir);
	CHECK(d != NULL);
	int nwant = 0;
	while (want[nwant])
		nwant++;
	int seen[16] = { 0 }, dots = 0, total = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		total++;
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
			CHECK(e->d_type == DT_DIR);
			CHECK(e->d_ino == (e->d_name[1] ? parent : self.st_ino));
			dots++;
			continue;
		}
		int k;
		for (k = 0; k < nwant; k++)
			if (strcmp(e->d_name, want[k]) == 0)
				break;
		if (k == nwant)
			fprintf(stderr, "unexpected entry %s/%s\n", dir, e->d_name);
		CHECK(k < nwant);
		seen[k]++;
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		struct stat st;
		CHECK(stat(p, &st) == 0);
		CHECK(e->d_ino == st.st_ino);
		if (strcmp(e->d_name, "devices") == 0) {
			CHECK(e->d_type == DT_DIR && S_ISDIR(st.st_mode));
		} else {
			CHECK(e->d_type == DT_CHR && S_ISCHR(st.st_mode));
			/* Relative to the directory's fd, as fts-based tools look. */
			struct stat at;
			CHECK(fstatat(dirfd(d), e->d_name, &at, AT_SYMLINK_NOFOLLOW) == 0);
			CHECK(S_ISCHR(at.st_mode) && at.st_rdev == st.st_rdev && at.st_ino == st.st_ino);
		}
	}
	closedir(d);
	CHECK(dots == 2 && total == nwant + 2);
	for (int k = 0; k < nwant; k++)
		CHECK(seen[k] == 1);
}

static int walked_dirs, walked_nodes;

static int walk_fn(const char *fpath, const struct stat *sb, int flag, struct FTW *ftw)
{
	struct stat st;
	if (strncmp(fpath, "/dev/vfio", 9) != 0 || stat(fpath, &st) != 0 || sb->st_ino != st.st_ino)
		return 1;
	if (flag == FTW_D) {
		if (!S_ISDIR(sb->st_mode) || (sb->st_mode & 0777) != 0755)
			return 1;
		walked_dirs++;
	} else if (flag == FTW_F) {
		if (!S_ISCHR(sb->st_mode) || sb->st_rdev != st.st_rdev)
			return 1;
		if (strncmp(fpath + ftw->base, "vfio", 4) != 0 &&
		    (fpath[ftw->base] < '0' || fpath[ftw->base] > '9'))
			return 1;
		walked_nodes++;
	} else {
		return 1;
	}
	return 0;
}

int main(void)
{
	CHECK(stat("/dev", &dev_st) == 0);
	check_dir("/dev/vfio", 3);
	check_dir("/dev/vfio/", 3);
	check_dir("/dev/vfio/devices", 2);
	check_dir("/dev/vfio/devices/", 2);
	struct stat a, b;
	CHECK(stat("/dev/vfio", &a) == 0 && stat("/dev/vfio/devices", &b) == 0);
	CHECK(a.st_ino != b.st_ino);

	static const char *const top[] = { "vfio", "5", "6", "7", "14", "devices", NULL };
	static const char *const cdevs[] = { "vfio0", "vfio1", "vfio2", "vfio3", "vfio4", NULL };
	check_listing("/dev/vfio", top, dev_st.st_ino);
	check_listing("/dev/vfio/devices", cdevs, a.st_ino);

	/* Other spellings of the directories, as ls -a stats them. */
	struct stat sc;
	CHECK(stat("/dev/vfio/.", &sc) == 0 && S_ISDIR(sc.st_mode) && sc.st_ino == a.st_ino);
	CHECK(stat("/dev/vfio/devices/..", &sc) == 0 && sc.st_ino == a.st_ino);
	CHECK(stat("/dev/vfio//devices/.", &sc) == 0 && sc.st_ino == b.st_ino);
	CHECK(stat("/dev/vfio/..", &sc) == 0 && sc.st_ino == dev_st.st_ino &&
	      sc.st_dev == dev_st.st_dev);
	int vfd = open("/dev/vfio", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK(vfd >= 0);
	CHECK(fstatat(vfd, "..", &sc, 0) == 0 && sc.st_ino == dev_st.st_ino);
	CHECK(fstatat(vfd, "devices", &sc, 0) == 0 && sc.st_ino == b.st_ino);
	close(vfd);

	/* The groups listed are those sysfs shows bound to vfio-pci. */
	DIR *drv = opendir("/sys/bus/pci/drivers/vfio-pci");
	CHECK(drv != NULL);
	struct dirent *e;
	int bound = 0;
	while ((e = readdir(drv)) != NULL) {
		if (e->d_name[0] != '0')
			continue;
		char p[PATH_MAX], link[PATH_MAX] = { 0 };
		snprintf(p, sizeof(p), "/sys/bus/pci/drivers/vfio-pci/%s/iommu_group", e->d_name);
		CHECK(readlink(p, link, sizeof(link) - 1) > 0);
		const char *slash = strrchr(link, '/');
		CHECK(slash != NULL);
		snprintf(p, sizeof(p), "/dev/vfio/%s", slash + 1);
		CHECK(stat(p, &a) == 0 && S_ISCHR(a.st_mode));
		bound++;
	}
	closedir(drv);
	CHECK(bound == 5);

	/* scandir: the result's entries are the nodes, DT_CHR. */
	struct dirent **list;
	int n = scandir("/dev/vfio/devices", &list, NULL, alphasort);
	CHECK(n == 7);
	CHECK(strcmp(list[0]->d_name, ".") == 0 && strcmp(list[1]->d_name, "..") == 0);
	for (int i = 2; i < n; i++) {
		char want[16];
		snprintf(want, sizeof(want), "vfio%d", i - 2);
		CHECK(strcmp(list[i]->d_name, want) == 0 && list[i]->d_type == DT_CHR);
	}
	for (int i = 0; i < n; i++)
		free(list[i]);
	free(list);
	n = scandir("/dev/vfio/", &list, NULL, alphasort);
	CHECK(n == 8 && strcmp(list[2]->d_name, "14") == 0 && list[2]->d_type == DT_CHR &&
	      strcmp(list[3]->d_name, "5") == 0 && list[3]->d_type == DT_CHR &&
	      strcmp(list[6]->d_name, "devices") == 0 && list[6]->d_type == DT_DIR &&
	      strcmp(list[7]->d_name, "vfio") == 0 && list[7]->d_type == DT_CHR);
	for (int i = 0; i < n; i++)
		free(list[i]);
	free(list);

	/* glob answers /dev/vfio paths. */
	glob_t g;
	CHECK(glob("/dev/vfio/*", GLOB_MARK, NULL, &g) == 0 && g.gl_pathc == 6);
	CHECK(strcmp(g.gl_pathv[0], "/dev/vfio/14") == 0 &&
	      strcmp(g.gl_pathv[1], "/dev/vfio/5") == 0 &&
	      strcmp(g.gl_pathv[4], "/dev/vfio/devices/") == 0 &&
	      strcmp(g.gl_pathv[5], "/dev/vfio/vfio") == 0);
	globfree(&g);
	CHECK(glob("/dev/vfio/devices/vfio*", 0, NULL, &g) == 0 && g.gl_pathc == 5);
	CHECK(strcmp(g.gl_pathv[0], "/dev/vfio/devices/vfio0") == 0 &&
	      strcmp(g.gl_pathv[4], "/dev/vfio/devices/vfio4") == 0);
	globfree(&g);
	CHECK(glob("/dev/vfio/devices/nope*", 0, NULL, &g) == GLOB_NOMATCH);
	globfree(&g);

	/* nftw hands the program the stat of each path: directories and character devices. */
	CHECK(nftw("/dev/vfio", walk_fn, 8, FTW_PHYS) == 0);
	CHECK(walked_dirs == 2 && walked_nodes == 10);

	/* realpath answers the /dev path. */
	char rp[PATH_MAX];
	CHECK(realpath("/dev/vfio/devices/", rp) != NULL && strcmp(rp, "/dev/vfio/devices") == 0);

	/* The nodes are still the engine's. */
	int fd = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(fstat(fd, &a) == 0 && S_ISCHR(a.st_mode) && major(a.st_rdev) == 511 &&
	      minor(a.st_rdev) == 0);
	int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	CHECK(iommufd >= 0);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	CHECK(ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0 && bind.out_devid != 0);
	close(fd);
	close(iommufd);
	int c = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	CHECK(c >= 0 && ioctl(c, VFIO_GET_API_VERSION) == VFIO_API_VERSION);
	CHECK(fstat(c, &a) == 0 && S_ISCHR(a.st_mode) && minor(a.st_rdev) == 196);
	close(c);
	int grp = open("/dev/vfio/5", O_RDWR | O_CLOEXEC);
	CHECK(grp >= 0);
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	CHECK(ioctl(grp, VFIO_GROUP_GET_STATUS, &gs) == 0 && (gs.flags & VFIO_GROUP_FLAGS_VIABLE));
	close(grp);
	/* A node is not a directory. */
	CHECK_ERR(open("/dev/vfio/devices/vfio0", O_RDONLY | O_DIRECTORY), ENOTDIR);

	/* Unknown names stay ENOENT. */
	CHECK_ERR(open("/dev/vfio/devices/nope", O_RDONLY), ENOENT);
	CHECK_ERR(stat("/dev/vfio/devices/nope", &a), ENOENT);
	CHECK_ERR(access("/dev/vfio/devices/nope", F_OK), ENOENT);
	CHECK_ERR(open("/dev/vfio/nope", O_RDONLY), ENOENT);
	CHECK_ERR(stat("/dev/vfio/devices/vfio5", &a), ENOENT);
	CHECK_ERR(stat("/dev/vfio/4", &a), ENOENT);

	/* Other directories are the real ones. */
	CHECK(stat("/dev", &a) == 0 && a.st_ino == dev_st.st_ino);
	PASS("dev_dirs");
	return 0;
}
