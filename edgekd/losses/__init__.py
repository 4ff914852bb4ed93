"""edgekd.losses"""
