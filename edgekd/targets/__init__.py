"""edgekd.targets"""
