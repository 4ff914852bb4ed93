"""edgekd.profile"""
