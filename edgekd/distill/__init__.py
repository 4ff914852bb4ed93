"""edgekd.distill"""
