#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static long long now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000LL+t.tv_nsec;}
int cmp(const void*a,const void*b){long long x=*(long long*)a,y=*(long long*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){int n=atoi(argv[2]);int fd=open(argv[1],O_RDWR|O_CREAT,0644);ftruncate(fd,1<<24);char buf[4096];memset(buf,7,4096);fdatasync(fd);
long long*l=malloc(n*8);for(int i=0;i<n;i++){long long t=now();pwrite(fd,buf,4096,(i%4000)*4096L);fdatasync(fd);l[i]=now()-t;usleep(atoi(argv[3]));}
qsort(l,n,8,cmp);printf("%s p50 %.1f us p90 %.1f\n",argv[1],l[n/2]/1000.0,l[n*9/10]/1000.0);return 0;}
