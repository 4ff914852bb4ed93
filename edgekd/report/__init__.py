"""edgekd.report"""
