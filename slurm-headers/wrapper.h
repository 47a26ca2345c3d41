/* The Slurm API surface Shoal's SPANK plugin binds to. build.rs runs bindgen
 * on this file against the installed headers (SLURM_INCLUDE_DIR, default
 * /usr/include/slurm), so the plugin always matches the Slurm it is built for. */
#include <slurm/spank.h>
#include <slurm/slurm_version.h>

/* bindgen cannot evaluate function-like macros; expose the version as a value. */
static const unsigned int shoal_slurm_version_number = SLURM_VERSION_NUMBER;
