# Sourced by the scripts that build feature `torch`: points tch's build at the
# libtorch that scripts/setup-torch.sh installed. The built binaries carry an
# rpath to it (build.rs), so running them needs none of this.
cache=${P3O_CACHE:-$HOME/.cache/p3o}
export LIBTORCH_USE_PYTORCH=1
export PATH="$cache/torch-2.11.0/bin:$PATH"
