"""Virtual-detector operators (``nav`` maps): many masks in one matrix product.

* ``virtual_image``: any number of disk/annulus/rectangle specs and mask arrays;
* ``bright_field``: one disk (preset), a scalar map;
* ``annular_dark_field``: one annulus (preset), a scalar map.

Mask specs, the mask plan and the kernel live in :mod:`diffraflow.operators.virtual._masks`.
"""
