"""fuse_overlay: an overlay filesystem in userspace (pyfuse3), fuse-overlayfs compatible."""
