"""edgekd.export"""
