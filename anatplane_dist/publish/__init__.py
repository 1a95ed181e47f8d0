from anatplane_dist.publish.versions import *  # noqa  (temporary during the split)
