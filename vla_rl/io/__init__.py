"""Input/output that knows nothing of the rest of vla-rl: atomic files and directories, MP4
video, provenance (commit, versions, machine). Every other package may import it; it imports
none of them."""
