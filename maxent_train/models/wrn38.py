"""NVIDIA semantic-segmentation ``DeepWV3Plus`` (WiderResNetA2-38 trunk) as ``deeplabv3plus_wrn38``.

(Being written: no variant registered yet.)
"""
